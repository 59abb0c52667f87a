"""The Dagster shell: turns the spec into assets, sensors and resources that call the core."""
