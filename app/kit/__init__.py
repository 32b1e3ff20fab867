"""Infrastructure the feature slices share: database, storage, ids, paging, time, errors."""
