"""The method's maths: steps, value estimators, values and advantages, the change point, the probe."""
