from social_enrich.lakehouse.arrow_memory import return_freed_memory

return_freed_memory()  # before pyarrow is first imported: see arrow_memory
