"""Input pipeline for CIFAR-10 and CIFAR-shaped image folders."""
