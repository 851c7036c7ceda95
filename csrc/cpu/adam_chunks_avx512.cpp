// The avx512 copy of the Adam-family step loops (adam_chunks_impl.h).
#include "adam_chunks_impl.h"

FK_INSTANTIATE_ADAM_CHUNKS(IsaAvx512)
