//! Petrel monitor: drift, accuracy and confidence per window, and alerts.
