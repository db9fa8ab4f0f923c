//! Pod status as kubelet writes it.
