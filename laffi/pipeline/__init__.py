"""Stages over files (`stages`), their cache (`cache`), and the experiment grid that runs them (`experiment`)."""
