"""Demo territory."""
