"""ance.launch role package."""
