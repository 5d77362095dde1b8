//! The declared shape of a tabular data set: which columns are features, of which kind, and
//! which column holds the label.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::MlError;
use crate::image::ImageSpec;

/// How a feature column is interpreted, which decides both parsing and preprocessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// A real number; imputed with the median and standardised.
    Numeric,
    /// A label from a finite set; one-hot encoded.
    Categorical,
    /// Free text; tokenised and hashed into TF-IDF features (see [`crate::text`]).
    Text,
    /// A greyscale image of the shape its column declares (see [`crate::image`]).
    Image,
}

impl ColumnKind {
    /// The name used in JSON and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnKind::Numeric => "numeric",
            ColumnKind::Categorical => "categorical",
            ColumnKind::Text => "text",
            ColumnKind::Image => "image",
        }
    }
}

/// One feature column of a [`Schema`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The column name as it appears in CSV headers and JSON objects.
    pub name: String,
    /// How the column's values are parsed and encoded.
    pub kind: ColumnKind,
    /// The shape and pixel range of an image column (required for `image`, absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub image: Option<ImageSpec>,
}

impl Column {
    /// A numeric column; a shorthand that keeps schema literals readable.
    pub fn numeric(name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            kind: ColumnKind::Numeric,
            image: None,
        }
    }

    /// A categorical column; a shorthand that keeps schema literals readable.
    pub fn categorical(name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            kind: ColumnKind::Categorical,
            image: None,
        }
    }

    /// A text column; a shorthand that keeps schema literals readable.
    pub fn text(name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            kind: ColumnKind::Text,
            image: None,
        }
    }

    /// An image column of `height x width` pixels valued `0..=max_value`.
    pub fn image(name: impl Into<String>, height: usize, width: usize, max_value: f64) -> Column {
        Column {
            name: name.into(),
            kind: ColumnKind::Image,
            image: Some(ImageSpec {
                height,
                width,
                max_value,
            }),
        }
    }
}

/// The features (in the order the model sees them) and the name of the target column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Feature columns, in the order every [`FeatureRow`](crate::FeatureRow) follows.
    pub features: Vec<Column>,
    /// The column holding the class label.
    pub target: String,
}

impl Schema {
    /// The schema of the bundled Palmer Penguins data (target species; island, sex categorical;
    /// year and the four measurements numeric).
    pub fn penguins() -> Schema {
        Schema {
            features: vec![
                Column::categorical("island"),
                Column::numeric("bill_length_mm"),
                Column::numeric("bill_depth_mm"),
                Column::numeric("flipper_length_mm"),
                Column::numeric("body_mass_g"),
                Column::categorical("sex"),
                Column::numeric("year"),
            ],
            target: "species".to_string(),
        }
    }

    /// The schema of the bundled handwritten digits (`data/digits.csv`): one 8x8 image of
    /// pixels 0..16, target `digit`.
    pub fn digits() -> Schema {
        Schema {
            features: vec![Column::image("image", 8, 8, 16.0)],
            target: "digit".to_string(),
        }
    }

    /// Checks names are unique and non-empty, at least one feature, target not among features,
    /// and no name holds a control character.
    ///
    /// Every other function assumes a valid schema, because duplicate or blank names would make
    /// CSV headers and JSON objects ambiguous. Control characters are refused because nobody can
    /// type or see them, and a NUL cannot even be stored in Postgres text or `jsonb`.
    pub fn validate(&self) -> Result<(), MlError> {
        if self.features.is_empty() {
            return Err(MlError::Schema(
                "the schema needs at least one feature column".to_string(),
            ));
        }
        if self.target.trim().is_empty() {
            return Err(MlError::Schema(
                "the target column name is empty".to_string(),
            ));
        }
        if self.target.chars().any(char::is_control) {
            return Err(MlError::Schema(format!(
                "the target column name {:?} holds a control character",
                self.target
            )));
        }
        let mut seen = BTreeSet::new();
        for (index, column) in self.features.iter().enumerate() {
            if column.name.trim().is_empty() {
                return Err(MlError::Schema(format!(
                    "feature column #{} has an empty name",
                    index + 1
                )));
            }
            if column.name.chars().any(char::is_control) {
                return Err(MlError::Schema(format!(
                    "column name {:?} holds a control character",
                    column.name
                )));
            }
            if column.name != column.name.trim() {
                return Err(MlError::Schema(format!(
                    "column name '{}' has leading or trailing whitespace",
                    column.name
                )));
            }
            match (column.kind, &column.image) {
                (ColumnKind::Image, Some(spec)) => {
                    spec.validate(&column.name).map_err(MlError::Schema)?
                }
                (ColumnKind::Image, None) => {
                    return Err(MlError::Schema(format!(
                        "image column '{}' needs its height, width and max_value",
                        column.name
                    )));
                }
                (_, Some(_)) => {
                    return Err(MlError::Schema(format!(
                        "column '{}' is {}, but height, width and max_value belong to image \
                         columns",
                        column.name,
                        column.kind.as_str()
                    )));
                }
                (_, None) => {}
            }
            if !seen.insert(column.name.as_str()) {
                return Err(MlError::Schema(format!(
                    "column '{}' is declared more than once",
                    column.name
                )));
            }
        }
        if seen.contains(self.target.as_str()) {
            return Err(MlError::Schema(format!(
                "the target column '{}' is also declared as a feature",
                self.target
            )));
        }
        Ok(())
    }

    /// The position of a feature column, used to map named inputs onto row order.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penguins_schema_is_valid_and_shaped_as_documented() {
        let schema = Schema::penguins();
        schema.validate().unwrap();
        assert_eq!(schema.target, "species");
        assert_eq!(schema.features.len(), 7);
        let kind = |n: &str| schema.features[schema.feature_index(n).unwrap()].kind;
        assert_eq!(kind("island"), ColumnKind::Categorical);
        assert_eq!(kind("sex"), ColumnKind::Categorical);
        assert_eq!(kind("year"), ColumnKind::Numeric);
        assert_eq!(kind("body_mass_g"), ColumnKind::Numeric);
    }

    #[test]
    fn validate_rejects_each_kind_of_bad_schema() {
        let bad = |schema: Schema, needle: &str| {
            let err = schema.validate().unwrap_err();
            assert!(matches!(err, MlError::Schema(_)), "{err:?}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        bad(
            Schema {
                features: vec![],
                target: "y".into(),
            },
            "at least one feature",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a")],
                target: " ".into(),
            },
            "target column name is empty",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a"), Column::numeric("")],
                target: "y".into(),
            },
            "#2 has an empty name",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a"), Column::categorical("a")],
                target: "y".into(),
            },
            "'a' is declared more than once",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a"), Column::numeric("y")],
                target: "y".into(),
            },
            "also declared as a feature",
        );
        bad(
            Schema {
                features: vec![Column::numeric(" a")],
                target: "y".into(),
            },
            "whitespace",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a"), Column::categorical("is\0land")],
                target: "y".into(),
            },
            "column name \"is\\0land\" holds a control character",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a\u{7}b")],
                target: "y".into(),
            },
            "control character",
        );
        bad(
            Schema {
                features: vec![Column::numeric("a")],
                target: "spe\0cies".into(),
            },
            "target column name \"spe\\0cies\" holds a control character",
        );
        // A tab or newline inside a name is as invisible as a NUL.
        bad(
            Schema {
                features: vec![Column::numeric("a\tb")],
                target: "y".into(),
            },
            "control character",
        );
    }

    #[test]
    fn column_kind_serialises_in_snake_case() {
        let json = serde_json::to_string(&Column::categorical("sex")).unwrap();
        assert_eq!(json, r#"{"name":"sex","kind":"categorical"}"#);
        let back: Column = serde_json::from_str(r#"{"name":"x","kind":"numeric"}"#).unwrap();
        assert_eq!(back, Column::numeric("x"));
        let back: Column = serde_json::from_str(r#"{"name":"r","kind":"text"}"#).unwrap();
        assert_eq!(back, Column::text("r"));
        assert_eq!(ColumnKind::Text.as_str(), "text");
        let json = serde_json::to_string(&Column::image("img", 8, 8, 16.0)).unwrap();
        assert_eq!(
            json,
            r#"{"name":"img","kind":"image","height":8,"width":8,"max_value":16.0}"#
        );
        assert_eq!(
            serde_json::from_str::<Column>(&json).unwrap(),
            Column::image("img", 8, 8, 16.0)
        );
    }

    #[test]
    fn image_columns_declare_a_usable_shape() {
        Schema::digits().validate().unwrap();
        let schema = |column: Column| Schema {
            features: vec![column],
            target: "y".into(),
        };
        let err = |c: Column| schema(c).validate().unwrap_err().to_string();
        assert!(err(Column::image("i", 0, 8, 16.0)).contains("between 1x1"));
        assert!(err(Column::image("i", 8, 8, 0.0)).contains("max_value above 0"));
        let mut bare = Column::image("i", 8, 8, 16.0);
        bare.image = None;
        assert!(err(bare).contains("needs its height, width and max_value"));
        let mut numeric = Column::numeric("x");
        numeric.image = Column::image("i", 8, 8, 16.0).image;
        assert!(err(numeric).contains("belong to image columns"));
    }
}

/// What a dataset is for. Ingest records it and announces it on `data.ready`, so each consumer
/// takes only its own: the trainer trains on `training` data, the predictor scores `scoring`
/// data in bulk, and `reference` data is kept for comparison (drift baselines) and used by
/// neither. It lives here, beside [`Schema`], because both the HTTP types and the event payloads
/// carry it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DatasetPurpose {
    /// Labelled data to train on: the default, so events and requests from before the field
    /// existed mean what they always meant.
    #[default]
    Training,
    /// Rows to score in bulk with the served model (labels, if present, are ignored).
    Scoring,
    /// Data kept as a baseline, trained on and scored by nobody.
    Reference,
}

impl DatasetPurpose {
    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::Scoring => "scoring",
            Self::Reference => "reference",
        }
    }

    /// The inverse of [`DatasetPurpose::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "training" => Some(Self::Training),
            "scoring" => Some(Self::Scoring),
            "reference" => Some(Self::Reference),
            _ => None,
        }
    }
}
