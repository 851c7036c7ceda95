// The baseline copy of the reparameterization row loops (reparam_rows_impl.h).
#include "reparam_rows_impl.h"

FK_INSTANTIATE_REPARAM_ROWS(IsaBaseline)
