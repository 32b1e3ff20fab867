"""Where the service's bytes live: local folders under the data directory (`local`), an object
store (`object_store`), directories moved between them (`trees`), this process's cache of stored
things (`scratch`) and .tar.gz streams out (`tar_gz`). Framework-free and slice-free: the feature
slices build on it (a model's manifest is `app.models.store`'s), it builds on `app.kit` alone."""
