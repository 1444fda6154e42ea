"""ance.inferencer role package."""
