"""Reading inputs: files, folders and DICOMDIR media; UIDs; the instance digest."""
