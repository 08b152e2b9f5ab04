"""What every layer may use: the settings, the errors the services raise, logging and the
metrics registry. It imports nothing else of the backend."""
