"""Reading runs back: evaluate.py's evaluation, your own images classified, run folders compared (report), the study's
table, the plots. Imports cifar.run and cifar.core."""
