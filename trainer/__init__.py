"""ance.trainer role package."""
