"""Submit to Kaggle: the predict entry point, the evaluation server, the time budget, the offline bundle."""
