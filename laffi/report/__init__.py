"""Results tables (`tables`), the experiment report in markdown and HTML (`experiment`), plots (`plots`)."""
