"""``python -m pavlov`` (what torchrun runs: ``torchrun --nproc-per-node N -m pavlov ...``)."""

from pavlov.cli import main

main()
