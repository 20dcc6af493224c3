"""The S4D model in both modes, its data and its training; imports nothing else of the package but `io`."""
