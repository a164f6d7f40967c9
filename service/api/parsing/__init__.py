"""Request bodies, JSON parts and bulk uploads read into checked jobs, or a 4xx."""
