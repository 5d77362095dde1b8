//! Labeler API: `POST /v1/labels`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelInput {
    pub inference_id: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsRequest {
    pub labels: Vec<LabelInput>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsResponse {
    /// Labels stored by this call.
    pub accepted: usize,
    /// Of those, joined to their prediction already (the others wait for it).
    pub joined: usize,
    /// Labels already stored with the same value (a retried call); not counted twice.
    pub duplicates: usize,
}
