"""Training and judging the demo model: procedural shapes, a small trainer, a pixel judge."""
