//! Petrel labeler: joins ground truth to logged predictions.
