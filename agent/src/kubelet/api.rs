//! The kubelet API on port 10250.
