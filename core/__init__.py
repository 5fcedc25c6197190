"""Configuration and names shared by the API and the workers."""
