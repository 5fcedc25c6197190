"""Pure statistics and learning: DataFrames and arrays in, DataFrames, arrays and estimators out.

Nothing here imports Flask, Celery, Redis or any other part of Vigil.
"""
