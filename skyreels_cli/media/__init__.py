"""Media: input images and videos, output targets, frame sinks, atomic files and locks."""
