"""The benchmark suite behind ``tiered-memory bench``: ours and the peers, same data, same run."""
