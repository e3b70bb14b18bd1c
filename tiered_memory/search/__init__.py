"""Ranked candidates: the searcher (dense, lexical, hybrid), metadata filters, fusion, the BM25 tier."""
