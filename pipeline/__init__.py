"""Pure core of the product cutout service: no Ray imports anywhere in this package."""
