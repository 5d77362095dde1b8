//! Text columns: tokens, hashed TF-IDF features inside the bundle, and the derived features
//! (length, out-of-vocabulary share, token distribution) the monitor watches.
//!
//! The encoding is scikit-learn's `TfidfVectorizer` with its defaults (lowercase word tokens
//! of two or more characters, raw term counts, smoothed IDF `ln((1 + n) / (1 + df)) + 1`, rows
//! scaled to unit L2 norm), except that tokens are hashed into a fixed number of buckets (as
//! `HashingVectorizer` does) instead of being numbered through a vocabulary. The width is then
//! known before training, a token never seen in training still lands in a bucket, and the bundle
//! holds one IDF weight per bucket rather than a dictionary. A test checks the weights against
//! scikit-learn's on a corpus small enough to have no collisions.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Buckets a text column hashes into unless the training configuration says otherwise.
pub const DEFAULT_TEXT_BUCKETS: usize = 2048;

/// Terms join up to this many words unless the training configuration says otherwise: words
/// and word pairs.
pub const DEFAULT_NGRAMS: usize = 2;

/// The most buckets a text column may use (the matrix is dense: rows x buckets floats).
pub const MAX_TEXT_BUCKETS: usize = 1 << 16;

/// The most distinct training tokens a bundle keeps as the monitor's vocabulary.
pub const VOCABULARY_CAP: usize = 20_000;

/// How many of the most frequent training tokens the token-distribution test follows by name;
/// the rest are counted together as [`OTHER_TOKENS`].
pub const TOP_TOKENS: usize = 50;

/// The token-distribution category of every token outside the [`TOP_TOKENS`]. Tokens are
/// letters, digits and underscores, so it cannot collide with one.
pub const OTHER_TOKENS: &str = "(other)";

/// The lowercase word tokens of `text`: runs of letters, digits and underscores at least two
/// characters long, as scikit-learn's default `token_pattern` (`(?u)\b\w\w+\b`) finds them.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.chars().nth(1).is_some())
        .map(str::to_lowercase)
}

/// The most words a term may join ([`terms`]).
pub const MAX_NGRAMS: usize = 3;

/// The terms TF-IDF counts in `text`: its [`tokens`], then every run of 2 up to `ngrams`
/// consecutive tokens joined by a space (scikit-learn's `ngram_range=(1, ngrams)`), so that
/// "not great" is a term of its own and not only "not" and "great".
pub fn terms(text: &str, ngrams: usize) -> Vec<String> {
    let words: Vec<String> = tokens(text).collect();
    let mut out = words.clone();
    for n in 2..=ngrams.min(MAX_NGRAMS) {
        for window in words.windows(n) {
            out.push(window.join(" "));
        }
    }
    out
}

/// The bucket of a token: 64-bit FNV-1a of its UTF-8 bytes, modulo `buckets`. FNV is fixed by
/// its definition, so a bundle's encoding never changes with the compiler or a dependency.
pub fn bucket(token: &str, buckets: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % buckets.max(1) as u64) as usize
}

/// Smoothed inverse document frequency per bucket of the [`terms`] of `texts` (a missing text
/// is an empty document): `ln((1 + n) / (1 + df)) + 1`, so a bucket no document uses still has
/// a finite weight, the one of a term seen nowhere.
pub fn fit_idf<'a>(
    texts: impl Iterator<Item = Option<&'a str>>,
    buckets: usize,
    ngrams: usize,
) -> Vec<f64> {
    let mut df = vec![0u64; buckets];
    let mut seen = Vec::new();
    let mut n = 0u64;
    for text in texts {
        n += 1;
        let Some(text) = text else { continue };
        seen.clear();
        seen.extend(terms(text, ngrams).iter().map(|t| bucket(t, buckets)));
        seen.sort_unstable();
        seen.dedup();
        for &b in &seen {
            df[b] += 1;
        }
    }
    df.iter()
        .map(|&d| ((1.0 + n as f64) / (1.0 + d as f64)).ln() + 1.0)
        .collect()
}

/// Writes the TF-IDF encoding of `text` into `dst` (one slot per bucket, zero-filled by the
/// caller): counts of its [`terms`] times IDF, scaled to unit L2 norm. A text without tokens
/// stays zero.
pub fn encode_into(text: &str, idf: &[f64], ngrams: usize, dst: &mut [f32]) {
    let buckets = idf.len();
    let mut counts: Vec<(usize, u32)> = terms(text, ngrams)
        .iter()
        .map(|t| (bucket(t, buckets), 1))
        .collect();
    if counts.is_empty() {
        return;
    }
    counts.sort_unstable_by_key(|&(b, _)| b);
    counts.dedup_by(|next, kept| {
        if next.0 == kept.0 {
            kept.1 += next.1;
            true
        } else {
            false
        }
    });
    let weights: Vec<f64> = counts
        .iter()
        .map(|&(b, count)| f64::from(count) * idf[b])
        .collect();
    let norm = weights.iter().map(|w| w * w).sum::<f64>().sqrt();
    for (&(b, _), w) in counts.iter().zip(&weights) {
        dst[b] = (w / norm) as f32;
    }
}

/// The share of a text's tokens that are not in `vocabulary` (sorted); `None` for a text
/// without tokens, which has no share to speak of.
pub fn oov_share(text: &str, vocabulary: &[String]) -> Option<f64> {
    let (mut all, mut unknown) = (0u64, 0u64);
    for token in tokens(text) {
        all += 1;
        if vocabulary.binary_search(&token).is_err() {
            unknown += 1;
        }
    }
    (all > 0).then(|| unknown as f64 / all as f64)
}

/// Counts the tokens of `texts` by name for those in `top`, the rest as [`OTHER_TOKENS`].
pub fn token_counts<'a>(
    texts: impl Iterator<Item = &'a str>,
    top: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for text in texts {
        for token in tokens(text) {
            *counts.entry(token_category(token, top)).or_insert(0) += 1;
        }
    }
    counts
}

/// The token-distribution category of `token`: itself when it is one of `top`, else
/// [`OTHER_TOKENS`].
pub fn token_category(token: String, top: &BTreeMap<String, u64>) -> String {
    if top.contains_key(&token) {
        token
    } else {
        OTHER_TOKENS.to_owned()
    }
}

/// The name under which the monitor reports a feature derived from text column `column`.
pub fn derived_name(column: &str, feature: &str) -> String {
    format!("{column}.{feature}")
}

/// What a text column looked like in training, for the monitor: the reference of its derived
/// features.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextProfile {
    /// Tokens per non-missing training text (subsampled to the reference cap).
    pub lengths: Vec<f64>,
    /// Out-of-vocabulary share of each held-out text with tokens. Measured on rows the
    /// vocabulary was not built from, so it is the share new data of the same kind shows.
    pub oov_shares: Vec<f64>,
    /// The training split's distinct tokens (the [`VOCABULARY_CAP`] most frequent), sorted.
    pub vocabulary: Vec<String>,
    /// Training token counts of the [`TOP_TOKENS`] most frequent tokens, the others under
    /// [`OTHER_TOKENS`].
    pub tokens: BTreeMap<String, u64>,
}

impl TextProfile {
    /// Profiles the non-missing training texts of a column (lengths already subsampled by the
    /// caller are given separately, so every column samples the same way).
    pub fn from_texts<'a>(texts: impl Iterator<Item = &'a str>) -> (TextProfile, Vec<f64>) {
        let mut frequency: HashMap<String, u64> = HashMap::new();
        let mut lengths = Vec::new();
        for text in texts {
            let mut n = 0u64;
            for token in tokens(text) {
                *frequency.entry(token).or_insert(0) += 1;
                n += 1;
            }
            lengths.push(n as f64);
        }
        // Most frequent first, alphabetical on ties, so the cut does not depend on hashing.
        let mut ranked: Vec<(String, u64)> = frequency.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
        let mut other = 0u64;
        for (i, (token, count)) in ranked.iter().enumerate() {
            if i < TOP_TOKENS {
                tokens.insert(token.clone(), *count);
            } else {
                other += count;
            }
        }
        if other > 0 {
            tokens.insert(OTHER_TOKENS.to_owned(), other);
        }
        let mut vocabulary: Vec<String> = ranked
            .into_iter()
            .take(VOCABULARY_CAP)
            .map(|(t, _)| t)
            .collect();
        vocabulary.sort_unstable();
        let profile = TextProfile {
            lengths: Vec::new(),
            oov_shares: Vec::new(),
            vocabulary,
            tokens,
        };
        (profile, lengths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_scikit_learns_default_pattern() {
        let t: Vec<String> = tokens("I LOVED it -- a 10/10, don't_miss!  Café au lait.").collect();
        assert_eq!(
            t,
            [
                "loved", "it", "10", "10", "don", "t_miss", "café", "au", "lait"
            ]
        );
        assert_eq!(tokens("a b c").count(), 0);
    }

    #[test]
    fn buckets_are_fnv1a_and_stable() {
        // The published FNV-1a 64 test vectors: "" and "a".
        assert_eq!(bucket("", u64::MAX as usize), 0xcbf2_9ce4_8422_2325);
        assert_eq!(bucket("a", u64::MAX as usize), 0xaf63_dc4c_8601_ec8c);
        assert!(bucket("excellent", 2048) < 2048);
    }

    /// The weights of scikit-learn 1.9.1's `TfidfVectorizer()` (all defaults, and with
    /// `ngram_range=(1, 2)`) on this corpus, printed by `scripts/text-goldens.py`: every row's
    /// non-zero values, sorted. With 2^20 buckets no two of the corpus's terms collide, so
    /// hashing changes only where each weight lands, and the sorted values must agree.
    #[test]
    fn tfidf_weights_match_scikit_learn() {
        let corpus = [
            "The battery is great, great value",
            "terrible battery; the screen died",
            "Great screen and great sound",
            "",
        ];
        let golden: [&[f64]; 4] = [
            &[
                0.3293763839936038,
                0.3293763839936038,
                0.4177721783483124,
                0.4177721783483124,
                0.6587527679872076,
            ],
            &[
                0.401042746469996,
                0.401042746469996,
                0.401042746469996,
                0.5086718718935652,
                0.5086718718935652,
            ],
            &[
                0.348842231691988,
                0.4424621378947393,
                0.4424621378947393,
                0.697684463383976,
            ],
            &[],
        ];
        let bigram_golden: [&[f64]; 4] = BIGRAM_GOLDEN;
        for (ngrams, golden) in [(1, golden), (2, bigram_golden)] {
            check_against(&corpus, ngrams, golden);
        }
    }

    fn check_against(corpus: &[&str], ngrams: usize, golden: [&[f64]; 4]) {
        let buckets = 1 << 20;
        let idf = fit_idf(corpus.iter().map(|t| Some(*t)), buckets, ngrams);
        for (text, expected) in corpus.iter().zip(golden) {
            let mut row = vec![0f32; buckets];
            encode_into(text, &idf, ngrams, &mut row);
            let mut got: Vec<f64> = row
                .iter()
                .filter(|&&v| v != 0.0)
                .map(|&v| v.into())
                .collect();
            got.sort_by(f64::total_cmp);
            assert_eq!(got.len(), expected.len(), "{text}");
            for (g, e) in got.iter().zip(expected) {
                // The bundle keeps f32 features, so agreement is at f32 precision.
                assert!((g - e).abs() < 1e-7, "{text}: {g} vs {e}");
            }
        }
    }

    const BIGRAM_GOLDEN: [&[f64]; 4] = [
        &[
            0.2406922278533766,
            0.2406922278533766,
            0.305287571387529,
            0.305287571387529,
            0.305287571387529,
            0.305287571387529,
            0.305287571387529,
            0.305287571387529,
            0.305287571387529,
            0.4813844557067532,
        ],
        &[
            0.2811316284405006,
            0.2811316284405006,
            0.2811316284405006,
            0.3565798233381452,
            0.3565798233381452,
            0.3565798233381452,
            0.3565798233381452,
            0.3565798233381452,
            0.3565798233381452,
        ],
        &[
            0.261241582208972,
            0.33135182174056943,
            0.33135182174056943,
            0.33135182174056943,
            0.33135182174056943,
            0.33135182174056943,
            0.33135182174056943,
            0.522483164417944,
        ],
        &[],
    ];

    #[test]
    fn terms_add_word_pairs_in_order() {
        assert_eq!(
            terms("Not great, the battery", 2),
            [
                "not",
                "great",
                "the",
                "battery",
                "not great",
                "great the",
                "the battery"
            ]
        );
        assert_eq!(terms("Not great", 1), ["not", "great"]);
    }

    #[test]
    fn oov_share_and_token_counts() {
        let vocabulary = vec!["battery".to_owned(), "great".to_owned()];
        assert_eq!(
            oov_share("great battery, awful", &vocabulary),
            Some(1.0 / 3.0)
        );
        assert_eq!(oov_share("!!", &vocabulary), None);
        let top = BTreeMap::from([("great".to_owned(), 3)]);
        let counts = token_counts(["great great meh", "so so"].into_iter(), &top);
        assert_eq!(
            counts,
            BTreeMap::from([("great".to_owned(), 2), (OTHER_TOKENS.to_owned(), 3)])
        );
    }

    #[test]
    fn profile_ranks_tokens_and_keeps_a_sorted_vocabulary() {
        let texts = ["bb aa aa", "cc aa", "!"];
        let (profile, lengths) = TextProfile::from_texts(texts.into_iter());
        assert_eq!(lengths, vec![3.0, 2.0, 0.0]);
        assert_eq!(profile.vocabulary, ["aa", "bb", "cc"]);
        assert_eq!(profile.tokens["aa"], 3);
    }
}
