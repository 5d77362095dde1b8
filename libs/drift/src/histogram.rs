//! Histograms of reference against current, for drawing.
//!
//! A verdict alone does not tell an operator *how* a feature moved. Each column's result
//! carries the two distributions on shared bins so a UI can overlay them without the raw data.

use serde::{Deserialize, Serialize};

use crate::distance::{histogram_sorted, sturges_edges};
use crate::sample::{CategoryTable, NumericSample};

/// Most categories a categorical histogram lists; the rest are summed into one
/// [`OTHER_CATEGORY`] bar, so an identifier-like column cannot make a result megabytes long.
pub const MAX_CATEGORIES: usize = 50;

/// The label of the bar that sums the categories beyond [`MAX_CATEGORIES`].
pub const OTHER_CATEGORY: &str = "(other)";

/// Reference and current counts on shared bins. Missing values are not binned; they are
/// reported with the missing-share result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Histogram {
    /// Equal-width bins over both samples together (numpy's Sturges rule), so the bars line
    /// up: bin `i` is `[edges[i], edges[i+1])`, the last one closed.
    Numeric {
        /// `bins + 1` ascending edges; empty when neither side has a value.
        edges: Vec<f64>,
        /// Reference count per bin.
        reference: Vec<u64>,
        /// Current count per bin.
        current: Vec<u64>,
    },
    /// One bar per category, the most frequent (over both sides) first.
    Categorical {
        /// Category labels.
        categories: Vec<String>,
        /// Reference count per category.
        reference: Vec<u64>,
        /// Current count per category.
        current: Vec<u64>,
    },
}

impl Histogram {
    /// Shared-bin histogram of two numeric samples (either may be empty).
    #[must_use]
    pub fn numeric(reference: &NumericSample, current: &NumericSample) -> Histogram {
        let (r, c) = (reference.values(), current.values());
        let edges = match (r.is_empty(), c.is_empty()) {
            (true, true) => Vec::new(),
            (false, true) => sturges_edges(r, r),
            (true, false) => sturges_edges(c, c),
            (false, false) => sturges_edges(r, c),
        };
        if edges.is_empty() {
            return Histogram::Numeric {
                edges,
                reference: Vec::new(),
                current: Vec::new(),
            };
        }
        Histogram::Numeric {
            reference: histogram_sorted(r, &edges),
            current: histogram_sorted(c, &edges),
            edges,
        }
    }

    /// Category counts, most frequent first, capped at [`MAX_CATEGORIES`] bars.
    #[must_use]
    pub fn categorical(table: &CategoryTable) -> Histogram {
        let mut order: Vec<usize> = (0..table.cells.len()).collect();
        // Stable sort: equally frequent categories stay in category order.
        order.sort_by_key(|&i| std::cmp::Reverse(table.cells[i].0 + table.cells[i].1));
        let mut categories = Vec::new();
        let mut reference = Vec::new();
        let mut current = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            let (r, c) = table.cells[i];
            if rank < MAX_CATEGORIES {
                categories.push(table.categories[i].clone());
                reference.push(r);
                current.push(c);
            } else if rank == MAX_CATEGORIES {
                categories.push(OTHER_CATEGORY.to_owned());
                reference.push(r);
                current.push(c);
            } else {
                reference[MAX_CATEGORIES] += r;
                current[MAX_CATEGORIES] += c;
            }
        }
        Histogram::Categorical {
            categories,
            reference,
            current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_bins_are_shared() {
        let h = Histogram::numeric(
            &NumericSample::new(&[0.0, 1.0, 2.0, 3.0]),
            &NumericSample::new(&[4.0, 5.0, 6.0, 7.0]),
        );
        let Histogram::Numeric {
            edges,
            reference,
            current,
        } = h
        else {
            panic!("numeric histogram expected")
        };
        assert_eq!(edges, [0.0, 1.75, 3.5, 5.25, 7.0]);
        assert_eq!(reference, [2, 2, 0, 0]);
        assert_eq!(current, [0, 0, 2, 2]);
        let empty = Histogram::numeric(&NumericSample::default(), &NumericSample::default());
        assert_eq!(
            empty,
            Histogram::Numeric {
                edges: vec![],
                reference: vec![],
                current: vec![]
            }
        );
    }

    #[test]
    fn categorical_bars_are_capped() {
        let n = MAX_CATEGORIES + 5;
        let table = CategoryTable {
            categories: (0..n).map(|i| format!("{i:03}")).collect(),
            cells: (0..n).map(|i| (i as u64 + 1, 1)).collect(),
        };
        let Histogram::Categorical {
            categories,
            reference,
            current,
        } = Histogram::categorical(&table)
        else {
            panic!("categorical histogram expected")
        };
        assert_eq!(categories.len(), MAX_CATEGORIES + 1);
        assert_eq!(categories[0], format!("{:03}", n - 1));
        assert_eq!(categories[MAX_CATEGORIES], OTHER_CATEGORY);
        // The five least frequent (counts 1..=5) are summed.
        assert_eq!(reference[MAX_CATEGORIES], 15);
        assert_eq!(current[MAX_CATEGORIES], 5);
        assert_eq!(reference.iter().sum::<u64>(), (1..=n as u64).sum::<u64>());
    }
}
