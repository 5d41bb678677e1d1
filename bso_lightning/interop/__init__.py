"""Exchange with other tools of the field: NIR (the Neuromorphic Intermediate Representation)."""
