"""The tiers and what they are made of: hot (an LRU of records), warm (hnswlib graphs), the code blocks
scans read, the cold stores (LMDB, PostgreSQL) behind the ColdStore contract, and the on-disk index
of huge namespaces' cold parts."""
