"""Domain steps: pure functions first, thin Prefect task wrappers last in each module."""
