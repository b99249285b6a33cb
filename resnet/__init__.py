"""ResNets for CIFAR-10 (He et al. 2016, section 4.2) and their training library."""
