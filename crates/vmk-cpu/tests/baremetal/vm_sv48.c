#define LEVELS 4
#include "vm.h"
