#define LEVELS 3
#include "vm.h"
