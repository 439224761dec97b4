"""metalmem-agent: the command-line application over the metalmem library."""
