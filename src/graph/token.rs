//! Access tokens for Graph (placeholder: the graph work fills this in).
