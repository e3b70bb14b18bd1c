"""Adapters that let agent frameworks use a tiered_memory store through the shapes they already speak."""
