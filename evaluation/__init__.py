"""medrae evaluation: the paper's tables, the transfer matrix on held-out classifiers, the fault
campaign's harness and the comparison methods (RIT, ...).

Not on the runtime path: protect / restore / verify / info never import this package. Parts of it
need the ``train`` extra (PyTorch: the attacks and the held-out zoo).
"""
