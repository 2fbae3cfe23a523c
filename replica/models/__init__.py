"""Model implementations (Llama family) and loaders."""
