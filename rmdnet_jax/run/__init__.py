"""A run end to end: config files and saved configs, the work directory (lock, resume) and the pipeline that runs the stages in order."""
