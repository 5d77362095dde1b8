//! Petrel predictor: serves the production model over HTTP and logs every prediction.
