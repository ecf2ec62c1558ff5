"""Feature extraction: taps, trunk planning and execution, noise, preprocessing, specialisation."""
