"""Reading exports: containers, formats, normalised conversations and chunking."""
