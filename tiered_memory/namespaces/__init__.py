"""What is loaded: the registry of loaded namespaces (budget, victims) and the catalog of their rows."""
