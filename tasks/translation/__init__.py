"""Machine translation on a parallel corpus ``{train,valid,test}.{src,tgt}`` (or its synthetic stand-in)."""
