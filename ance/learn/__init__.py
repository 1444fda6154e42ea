"""The training maths: GradCache with RNG replay, the contrastive losses, distributed gathers.

May import: ance.run."""
