"""Reading runs back: run folders compared (report), the study's table, the plots. Imports cifar.config and cifar.core,
never cifar.run: a run folder is data (cifar/records.py), read without the machinery that wrote it."""
